"""Command lines for every backend. vLLM, TGI and `transformers serve` need CUDA or downloads this
machine cannot provide, so their commands are checked here rather than run."""

from pathlib import Path

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


def test_vllm_tgi_transformers(tmp_path: Path) -> None:
    configured = Settings(
        data_dir=tmp_path,
        llamacpp={
            "engines": {
                "vllm": {"command": ["vllm", "serve"], "kv_cache_space": "2GiB"},
                "tgi": {"command": ["text-generation-launcher"]},
                "transformers": {"command": ["transformers", "serve"]},
            }
        },
    )
    vllm = build_launch(ModelEntry(id="q", backend="vllm", path="/m", aliases=["Q2"], ctx_size=4096), configured, 7)
    # vLLM forks (API server, engine core, worker): the keeper ties the whole tree to us.
    assert vllm.argv[1:3] == ["-m", "llamacontroller.supervisor.keeper"]
    assert vllm.argv[3:6] == ["vllm", "serve", "/m"]
    assert vllm.argv[vllm.argv.index("--served-model-name") + 1] == "q"
    assert vllm.env["VLLM_API_KEY"] == vllm.api_key and vllm.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert "--enforce-eager" in vllm.argv  # no GPU here

    module = Settings(llamacpp={"engines": {"vllm": {"command": ["/venv/python", "-m", "vllm.x"]}}})
    argv = build_launch(ModelEntry(id="q", backend="vllm", path="/m"), module, 7).argv
    assert argv[3:8] == ["/venv/python", "-m", "vllm.x", "--model", "/m"]

    tgi = build_launch(ModelEntry(id="q", backend="tgi", path="/m", ctx_size=100), configured, 7)
    assert tgi.argv[3:6] == ["text-generation-launcher", "--model-id", "/m"]
    for flag in (["--port", "7"], ["--served-model-name", "q"], ["--max-total-tokens", "100"]):
        assert any(tgi.argv[i : i + 2] == flag for i in range(len(tgi.argv)))

    hf = build_launch(ModelEntry(id="org/q:v1", backend="transformers", path=str(tmp_path)), configured, 7)
    # It names the model after the path it is given: a link named after the id, in its cwd.
    assert hf.argv[:3] == ["transformers", "serve", "org/q:v1"] and hf.health_path == "/health"
    assert hf.cwd and (Path(hf.cwd) / "org/q:v1").resolve() == tmp_path.resolve()
    assert hf.env["HF_HOME"].startswith(str(tmp_path.resolve()))


def test_what_each_backend_serves_and_calls_the_model() -> None:
    from llamacontroller.supervisor.backends import BACKENDS

    gguf = ModelEntry(id="m", path="/m.gguf")
    assert BACKENDS["llamacpp"].served_name(gguf) is None  # llama-server ignores `model`
    assert BACKENDS["llamacpp"].serves(gguf, "/tokenize") and not BACKENDS["llamacpp"].serves(gguf, "/v1/embeddings")
    st = ModelEntry(id="m", backend="transformers", path="/m")
    assert BACKENDS["transformers"].serves(st, "/v1/chat/completions")
    assert not BACKENDS["transformers"].serves(st, "/tokenize") and not BACKENDS["transformers"].stream_done
    assert BACKENDS["vllm"].serves(st, "/tokenize") and BACKENDS["vllm"].served_name(st) == "m"
    far = ModelEntry(id="m", backend="remote", url="http://x", upstream_model="gpt-x")
    assert BACKENDS["remote"].served_name(far) == "gpt-x"


def test_auto_picks_by_what_the_path_is_and_what_is_installed(tmp_path: Path) -> None:
    from llamacontroller.supervisor.backends import resolve

    (tmp_path / "model.safetensors").write_bytes(b"")
    installed = Settings(llamacpp={"engines": {"vllm": {"command": ["vllm", "serve"]}}})
    backend, reason = resolve(ModelEntry(id="m", backend="auto", path="/x/m.gguf"), installed)
    assert backend.name == "llamacpp" and "gguf" in reason
    backend, reason = resolve(ModelEntry(id="m", backend="auto", path=str(tmp_path)), installed)
    assert backend.name == "vllm" and "no CUDA GPU" in reason
    backend, _ = resolve(ModelEntry(id="m", backend="vllm", path=str(tmp_path)), installed)
    assert backend.name == "vllm"
