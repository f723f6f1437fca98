from llamacontroller.cli import main

main()
