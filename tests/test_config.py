import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.kinds.negatives.schema import NegType


def test_precedence_file_then_env_then_cli(tmp_path, monkeypatch):
    f = tmp_path / "run.yaml"
    f.write_text("sampling:\n  temperature: 0.3\n  seed: 5\n  n: 3\ninput:\n  limit: 7\n")
    monkeypatch.setenv("CONTRASTGEN_SAMPLING__SEED", "9")
    monkeypatch.setenv("CONTRASTGEN_SAMPLING__N", "4")
    cfg = load_config(f, {"sampling": {"n": 1}})
    assert cfg.sampling.temperature == 0.3  # file
    assert cfg.sampling.seed == 9  # env beats file
    assert cfg.sampling.n == 1  # CLI beats env
    assert cfg.input.limit == 7


def test_all_problems_reported_together(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("sampling:\n  temperature: -1\n  top_p: 2\nnegatives:\n  types: [swap_obj, bogus]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    msg = str(exc.value)
    assert "3 problem(s)" in msg
    for field in ("sampling.temperature", "sampling.top_p", "negatives.types"):
        assert field in msg
    assert str(f) in msg


def test_unknown_section_rejected():
    with pytest.raises(ConfigError, match="bogus"):
        load_config(None, {"bogus": {"x": 1}})


def test_defaults_cover_all_types():
    cfg = load_config(None)
    assert cfg.negatives.types == list(NegType)
    assert cfg.engine.resolved_model_path().suffix == ".gguf"


def test_bad_yaml_names_file(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="run.yaml"):
        load_config(f)


def test_ray_clients_need_the_openai_engine():
    with pytest.raises(ConfigError, match=r"ray.clients.*engine.kind 'embedded'.*Fix"):
        load_config(None, {"ray": {"clients": 2}})
    assert load_config(None, {"ray": {"clients": 2}, "engine": {"kind": "openai"}}).ray.clients == 2
