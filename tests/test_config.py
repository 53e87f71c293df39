"""NEMPConfig: presets, overrides, validation, serialisation."""

import pytest

from ase_nemp import NEMP, NEMPConfig
from ase_nemp.model import MLPSpec, PRESETS


def mlp_size(d_in, d_out, spec, bias=False):
    if spec.linear:
        return d_in * d_out + (d_out if bias else 0)
    f, hidden = spec.width, spec.blocks * spec.layers
    return d_in * f + hidden * f * f + f * d_out + ((f + hidden * f + d_out) if bias else 0)


def expected_parameters(cfg, num_paths):
    """Parameter count written out from the spec, independently of the module code."""
    S, C, NR, P, L, l, T = (cfg.num_species, cfg.num_channels, cfg.num_radial, cfg.pair_dim,
                            cfg.sh_lmax, cfg.feat_lmax, cfg.num_layers)
    pair_in = 2 * S if cfg.pair_input == "one_hot" else 2
    n = mlp_size(pair_in, P, cfg.pair_mlp, True) + mlp_size(P, NR, cfg.pair_mlp, True) + mlp_size(P, C + NR, cfg.pair_mlp)
    n += mlp_size(2 * NR, (l + 3) * C, cfg.edge_mlp)
    n += sum(mlp_size((2 + t) * C, 3 * (l + 1) * C, cfg.coeff_mlp) for t in range(T + 1))
    n += sum(mlp_size((3 + t) * C, (l + 1 + L + 1) * C, cfg.coeff_mlp) for t in range(T))
    n += S * C * C + T * S * 3 * C * C + T * num_paths * S * C
    n += mlp_size((T + 2) * C, 1, cfg.readout_mlp, cfg.readout_bias) + 2 * S
    return n


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts_follow_the_spec(name):
    species = ["H", "C", "N", "O"] if name in ("3bpa", "ani1x") else ["H", "O"]
    cfg = NEMPConfig.preset(name, species=species)
    model = NEMP(cfg)
    assert model.num_parameters() == expected_parameters(cfg, len(model.paths))
    assert 20_000 < model.num_parameters() < 2_000_000


def test_preset_values_and_overrides():
    cfg = NEMPConfig.preset("water-small", species=["O", "H"])
    assert cfg.species == (1, 8) and cfg.symbols == ["H", "O"]
    assert (cfg.num_layers, cfg.num_channels, cfg.cutoff, cfg.sh_lmax) == (2, 4, 4.5, 2)
    assert cfg.coeff_mlp == MLPSpec(1, 16, 2, False) and cfg.num_radial == 4
    assert NEMPConfig.preset("3bpa", species=[1, 6, 7, 8]).edge_mlp.linear
    over = NEMPConfig.preset("water", species=["H", "O"], cutoff=5.0, num_channels=12)
    assert over.cutoff == 5.0 and over.num_channels == 12 and over.num_radial == 12
    with pytest.raises(ValueError, match="unknown NEMPConfig preset 'foo'.*water-small"):
        NEMPConfig.preset("foo")


def test_round_trip_through_dict():
    cfg = NEMPConfig.preset("emlp", species=["Pd", "C", "O"])
    assert NEMPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown NEMPConfig keys"):
        NEMPConfig.from_dict({**cfg.to_dict(), "layers": 3})


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(feat_lmax=3, sh_lmax=2), "must not exceed"),
        (dict(cutoff=-1.0), "cutoff must be positive"),
        (dict(species=["H", "Xx"]), "unknown chemical symbol"),
        (dict(species=[1, 1]), "duplicates"),
        (dict(species=[]), "empty"),
        (dict(pair_input="bits"), "pair_input"),
        (dict(num_channels=0), "num_channels"),
        (dict(pair_mlp="linear"), "pair_mlp cannot be linear"),
    ],
)
def test_invalid_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NEMPConfig(**kwargs)


def test_mlp_spec_parsing():
    assert MLPSpec.parse([2, 64]) == MLPSpec(2, 64, 2, False)
    assert MLPSpec.parse([1, 16, 2, True]).linear
    assert MLPSpec.parse("linear").linear
    assert MLPSpec.parse({"blocks": 3, "width": 8}) == MLPSpec(3, 8)
    with pytest.raises(ValueError):
        MLPSpec.parse("deep")
    with pytest.raises(ValueError):
        MLPSpec.parse([1])


def test_config_is_frozen():
    cfg = NEMPConfig()
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cutoff = 3.0
    assert cfg.replace(cutoff=3.0).cutoff == 3.0
