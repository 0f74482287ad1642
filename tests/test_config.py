"""Configuration: every problem reported at once with its dotted path; the resolved config round-trips."""

from __future__ import annotations

import tomllib

import pytest
import tomli_w

from diffmia.attacks import ClassifierAttack, DistributionAttack, ThresholdAttack
from diffmia.config import Config, dump_config, load_config, parse_config
from diffmia.errors import ConfigError


def test_defaults_round_trip_through_toml(tmp_path):
    path = tmp_path / "resolved.toml"
    path.write_text(dump_config(Config()))
    assert load_config(path) == Config()
    assert load_config(None) == Config()


def test_values_reach_the_attacks(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[attacks]\nuse = ["classifier", "threshold"]\n'
        '[attacks.threshold]\nreduce = "max"\n'
        "[attacks.classifier]\nhidden_layer_sizes = [32, 8]\nalpha = 1\nseed = 5\n"
        "[evaluation]\nfprs = [0.05]\n"
    )
    config = load_config(path)
    attacks = config.attacks.build()
    assert list(attacks) == ["classifier", "threshold"]
    assert isinstance(attacks["threshold"], ThresholdAttack) and attacks["threshold"].reduce == "max"
    classifier = attacks["classifier"]
    assert isinstance(classifier, ClassifierAttack)
    assert (classifier.hidden_layer_sizes, classifier.alpha, classifier.random_state) == ((32, 8), 1.0, 5)
    assert config.evaluation.fprs == [0.05]
    assert isinstance(Config().attacks.build()["distribution"], DistributionAttack)


def test_misspelt_key_names_its_path_and_the_likely_key():
    with pytest.raises(ConfigError) as error:
        parse_config({"attacks": {"clasifier": {"alpha": 0.1}}}, "c.toml")
    assert str(error.value) == "c.toml: 1 problem: attacks.clasifier: unknown key (did you mean 'classifier'?)"


def test_every_problem_is_reported_at_once():
    data = {
        "evaluation": {"n_bootstrap": "100", "fprs": [0.01, 2.0], "sed": 1},
        "attacks": {"use": ["thresh"], "distribution": {"covariance": "fulll"}, "threshold": {"reduce": -1}},
    }
    with pytest.raises(ConfigError) as error:
        parse_config(data, "c.toml")
    message = str(error.value)
    assert message.startswith("c.toml: 6 problems: ")
    for part in (
        "evaluation.n_bootstrap: input should be a valid integer (got '100')",
        "evaluation.fprs.1: input should be less than or equal to 1 (got 2.0)",
        "evaluation.sed: unknown key (did you mean 'seed'?)",
        "attacks.use.0: input should be 'threshold', 'distribution' or 'classifier' (got 'thresh')",
        "attacks.distribution.covariance: input should be 'scalar', 'diagonal' or 'full' (got 'fulll')",
        "attacks.threshold.reduce: should be",
    ):
        assert part in message
    assert "\n" not in message


def test_unknown_key_without_a_close_match_lists_the_valid_ones():
    valid = "evaluation, attacks, finetune, captioner_training, target, generation, data, features, audit"
    with pytest.raises(ConfigError, match=rf"zzz: unknown key \(valid keys: {valid}\)"):
        parse_config({"zzz": 1})


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[attacks\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_audit_sections_are_validated_together():
    with pytest.raises(ConfigError) as error:
        parse_config(
            {
                "data": {"members": "m"},
                "audit": {"name": "a/b", "overlap": 1.0, "scenarios": ["V"]},
                "features": {"distances": ["cosine", "manhattan"]},
            }
        )
    message = str(error.value)
    assert message.startswith("config: 4 problems:")  # the name is checked once the fields are valid
    assert "data: set members, nonmembers and auxiliary together, or none of them for the bundled digits" in message
    assert "audit.overlap: input should be less than 1" in message
    assert "audit.scenarios.0: input should be 'I', 'II', 'III' or 'IV'" in message
    assert "features.distances.1: input should be 'cosine', 'l1', 'l2', 'hamming' or 'ssim'" in message
    with pytest.raises(ConfigError, match="audit: name must be a plain folder name"):
        parse_config({"audit": {"name": ".."}})
    assert parse_config({}).data.builtin and parse_config({}).audit.captioner == "builtin"


def test_a_target_is_validated_by_its_kinds_model_and_a_key_of_another_kind_names_that_kind():
    from diffmia.targets.diffusers import DiffusersTargetConfig
    from diffmia.targets.http import HTTPTargetConfig

    assert isinstance(parse_config({}).target, DiffusersTargetConfig)  # no [target], or no kind: a local pipeline
    assert isinstance(parse_config({"target": {"model": "m"}}).target, DiffusersTargetConfig)
    http = parse_config({"target": {"kind": "http", "url": "http://127.0.0.1:7860", "api": "a1111"}})
    assert isinstance(http.target, HTTPTargetConfig) and http.target.api == "a1111"
    assert parse_config(tomllib.loads(dump_config(http))) == http  # the kind's keys, and only those, round-trip
    assert set(tomllib.loads(dump_config(http))["target"]) == set(HTTPTargetConfig.model_fields) - {
        "token_env",
        "width",
        "height",
    }  # unset: left out
    with pytest.raises(ConfigError) as error:
        parse_config({"target": {"url": "http://h", "device": "cpu", "dtype": "float9"}})
    assert str(error.value) == (
        "config: 2 problems: target.dtype: input should be 'auto', 'float64', 'float32', 'float16' or 'bfloat16' "
        "(got 'float9'); target.url: unknown key for kind 'diffusers' (it belongs to kind 'http')"
    )
    with pytest.raises(ConfigError, match=r"target\.device: unknown key for kind 'http' \(it belongs to kind 'diffus"):
        parse_config({"target": {"kind": "http", "url": "http://h", "device": "cpu"}})
    with pytest.raises(ConfigError, match=r"target\.modle: unknown key \(did you mean 'model'\?\)"):
        parse_config({"target": {"modle": "m"}})
    with pytest.raises(ConfigError, match=r"^config: 1 problem: target\.kind: input should be 'diffusers' or 'http'"):
        parse_config({"target": {"kind": "comfy"}})


def test_a_run_directory_of_diffmia_0_1_resumes_although_its_target_held_every_kinds_keys(tmp_path):
    """diffmia 0.1 wrote one flat [target] with the keys of both kinds; such a config.toml still matches."""
    from diffmia.audit.plan import check_run_dir

    config = parse_config({"audit": {"runs_dir": str(tmp_path), "name": "old"}})
    legacy = tomllib.loads(dump_config(config))
    legacy["target"] |= {"api": "diffmia", "timeout": 120.0, "retries": 4, "concurrency": 2}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.toml").write_text(tomli_w.dumps(legacy))
    check_run_dir(tmp_path / "old", config)  # the same configuration: no error
    changed = parse_config({"audit": {"runs_dir": str(tmp_path), "name": "old", "seed": 1}})
    with pytest.raises(ConfigError, match="holds a run of a different configuration"):
        check_run_dir(tmp_path / "old", changed)
