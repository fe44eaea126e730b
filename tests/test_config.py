"""SweepConfig: defaults, parsing, precedence (CLI > YAML > defaults), validation at the edge."""

import math

import pytest

from ctrobust.config import ConfigError, SweepConfig, parse_attacks, parse_betas, parse_eps, parse_seeds


@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), ("0.5", 0.5), (" 4 / 255 ", 4 / 255),
                                        ("1e-2", 0.01), (0.25, 0.25), ("2", 2.0)])
def test_parse_eps_accepts_fractions_and_decimals(text, value):
    assert math.isclose(parse_eps(text), value, rel_tol=1e-12)


@pytest.mark.parametrize("junk", ["8/0", "-1", "abc", "", "0", "8//255", "nan", "inf", "1/2/3", True])
def test_parse_eps_rejects_junk_with_clear_message(junk):
    with pytest.raises(ConfigError) as e:
        parse_eps(junk)
    assert "eps" in str(e.value)


def test_parse_betas_paper_grid_has_30_values_plus_baseline():
    betas = parse_betas("0.70:0.99:0.01")
    assert len(betas) == 31
    assert betas[0] == 1.0 and betas[1] == 0.99 and betas[-1] == 0.7
    assert 0.85 in betas  # exact decimal steps, no 0.8500000001
    assert betas == sorted(betas, reverse=True)


def test_parse_betas_list_always_adds_baseline_and_dedups():
    assert parse_betas("0.9,0.95,0.9") == [1.0, 0.95, 0.9]
    assert parse_betas([1.0, 0.5]) == [1.0, 0.5]


@pytest.mark.parametrize("bad", ["0", "1.1", "-0.5,0.9", "0.9:0.8:0.01", "0.7:0.9", "x", "0.7:0.9:0"])
def test_parse_betas_rejects_out_of_range(bad):
    with pytest.raises(ConfigError):
        parse_betas(bad)


def test_parse_seeds_and_attacks():
    assert parse_seeds("42 43 44") == [42, 43, 44]
    assert parse_seeds(["0", "1"]) == [0, 1]
    with pytest.raises(ConfigError):
        parse_seeds("a")
    assert parse_attacks("standard") == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert parse_attacks("APGD-CE,square") == ["apgd-ce", "square"]
    with pytest.raises(ConfigError, match="did you mean 'apgd-ce'"):
        parse_attacks("apgd-c")


def test_defaults_are_the_paper_protocol_and_canonicalized():
    cfg = SweepConfig().validate()
    assert cfg.model == "Standard" and cfg.threat == "Linf"
    assert math.isclose(cfg.eps, 8 / 255)
    assert len(cfg.betas) == 31 and cfg.coeff == 0.5
    assert cfg.subset == "balanced" and cfg.n_examples == 1000
    assert str(cfg.run_dir) == "runs/Standard_cifar10_Linf_8_255"
    l2 = SweepConfig(threat="l2").validate()
    assert l2.threat == "L2" and l2.eps == 0.5


def test_yaml_then_cli_precedence(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model: Foo\neps: 4/255\nbetas: 0.9\nseeds: [1, 2]\n")
    cfg = SweepConfig.from_cli({"eps": "2/255", "model": None}, config_path=y)
    assert cfg.model == "Foo"                      # from YAML
    assert math.isclose(cfg.eps, 2 / 255)          # CLI wins
    assert cfg.seeds == [1, 2] and cfg.betas == [1.0, 0.9]


def test_unknown_yaml_key_is_an_error_with_suggestion(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("modle: Standard\n")
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        SweepConfig.from_cli({}, config_path=y)


@pytest.mark.parametrize("field,value", [("coeff", 1.5), ("n_examples", 0), ("batch_size", "big"),
                                         ("device", "gpu"), ("engine", "fastest"), ("threat", "L1"),
                                         ("dataset", "mnist"), ("eps", "300/255")])
def test_validate_rejects_bad_values(field, value):
    with pytest.raises(ConfigError):
        SweepConfig(**{field: value}).validate()


def test_attack_suites_carry_every_parameter_into_the_key():
    from ctrobust.attacks import SUITES, parse_suite

    rand = SweepConfig(model="m", attacks="rand").validate()
    plain = SweepConfig(model="m", attacks="apgd-ce,apgd-dlr").validate()
    assert rand.attack_list == plain.attack_list == ["apgd-ce", "apgd-dlr"]
    assert rand.determining()["attacks"]["eot_iter"] == 20 and plain.determining()["attacks"]["eot_iter"] == 1
    assert rand.determining() != plain.determining()
    # a list that spells out a named suite is that suite
    assert parse_suite("apgd-ce, apgd-t, fab-t, square") is SUITES["standard"]
    assert SweepConfig(model="m", attacks="apgd-ce apgd-t fab-t square").validate().attacks == "standard"
    with pytest.raises(ConfigError, match="combined"):
        SweepConfig(model="m", attacks="rand,square").validate()
    with pytest.raises(ConfigError, match="twice"):
        SweepConfig(model="m", attacks="square,square").validate()


def test_names_are_canonicalized_by_their_owners():
    from ctrobust.data import parse_dataset

    cfg = SweepConfig(model="m", dataset="CIFAR-10", threat="linf", subset="Balanced", data="BUNDLED").validate()
    assert (cfg.dataset, cfg.threat, cfg.subset, cfg.data) == ("cifar10", "Linf", "balanced", "bundled")
    assert cfg.dataset == parse_dataset("cifar-10")
    for bad, needle in ((dict(dataset="cifar11"), "cifar10"), (dict(threat="L1"), "L2"),
                        (dict(subset="balance"), "balanced"), (dict(data="ful"), "full")):
        with pytest.raises(ConfigError, match=needle):
            SweepConfig(model="m", **bad).validate()
