"""Command lines for every backend. vLLM, TGI and `transformers serve` need CUDA or downloads this
machine cannot provide, so their commands are checked here rather than run."""

from llamacontroller.config import ModelEntry, Settings
from llamacontroller.supervisor.backends import build_launch


def settings() -> Settings:
    return Settings(llama_server_bin="/opt/llama-server", llamacpp={"default_args": ["--threads", "2"]})


def test_llamacpp_command_is_a_list_with_our_flags_then_the_models() -> None:
    entry = ModelEntry(
        id="m", path="/models/m.gguf", ctx_size=8192, args=["--n-gpu-layers", "99"], gpus=[1], embedding=True
    )
    launch = build_launch(entry, settings(), 4242)
    assert launch.argv[:3] == ["/opt/llama-server", "--threads", "2"]
    assert launch.argv[-2:] == ["--n-gpu-layers", "99"]
    for flag in (
        ["--port", "4242"],
        ["--host", "127.0.0.1"],
        ["-m", "/models/m.gguf"],
        ["-c", "8192"],
        ["--pooling", "mean"],
    ):
        assert any(launch.argv[i : i + 2] == flag for i in range(len(launch.argv)))
    assert "--metrics" in launch.argv and "--embeddings" in launch.argv
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "1"
    assert launch.health_path == "/health"


def test_each_launch_gets_its_own_engine_key_never_on_the_command_line() -> None:
    entry = ModelEntry(id="m", path="/models/m.gguf")
    first, second = build_launch(entry, settings(), 1), build_launch(entry, settings(), 1)
    assert first.api_key and second.api_key and first.api_key != second.api_key
    assert first.env["LLAMA_API_KEY"] == first.api_key
    assert not any(first.api_key in arg for arg in first.argv)  # /proc/PID/cmdline is world-readable


def test_engines_get_a_scrubbed_environment() -> None:
    from llamacontroller.supervisor.spawn import engine_environment

    env = engine_environment(
        {
            "PATH": "/usr/bin",
            "CUDA_VISIBLE_DEVICES": "0",
            "LLAMACONTROLLER_ADMIN_PASSWORD": "secret",
            "LLAMACONTROLLER_DATABASE_URL": "postgresql://u:p@db/x",
            "HF_TOKEN": "hf_secret",
            "AWS_SECRET_ACCESS_KEY": "x",
        }
    )
    assert env == {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0"}


def test_hostile_args_stay_single_arguments() -> None:
    entry = ModelEntry(id="m", path="/models/m.gguf; rm -rf /", args=["--alias", "$(reboot)"])
    launch = build_launch(entry, settings(), 1)
    assert "/models/m.gguf; rm -rf /" in launch.argv and "$(reboot)" in launch.argv  # never a shell


def test_vllm_tgi_transformers() -> None:
    vllm = build_launch(ModelEntry(id="q", backend="vllm", path="Qwen/Qwen2.5-7B", ctx_size=4096), settings(), 7)
    assert vllm.argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B"] and "--served-model-name" in vllm.argv
    tgi = build_launch(ModelEntry(id="q", backend="tgi", path="/m"), settings(), 7)
    assert tgi.argv[0] == "text-generation-launcher" and tgi.argv[5:7] == ["--port", "7"]
    hf = build_launch(ModelEntry(id="q", backend="transformers", path="/m"), settings(), 7)
    assert hf.argv[:2] == ["transformers", "serve"] and hf.health_path == "/v1/models"
