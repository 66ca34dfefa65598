"""``--option KEY=VALUE``: the one parser (backend.cli.common.parse_options) every command that
takes pipeline options uses, its typed errors, and the option names it checks against."""

from __future__ import annotations

import pytest

from backend.cli import main
from backend.cli.common import option_names, parse_options
from backend.errors import InvalidOptionError


def test_values_are_json_where_they_can_be():
    got = parse_options(
        ["steps=3", "mvdream=false", "encoder=taesd", "scale=0.5", "radius_range=[0.6, 0.8]", 'style="a b"', "empty="]
    )
    assert got == {
        "steps": 3,
        "mvdream": False,
        "encoder": "taesd",
        "scale": 0.5,
        "radius_range": [0.6, 0.8],
        "style": "a b",
        "empty": "",
    }
    assert type(got["steps"]) is int and type(got["scale"]) is float


@pytest.mark.parametrize(
    ("pairs", "fragment"),
    [
        (["steps"], "is not KEY=VALUE"),
        (["=3"], "is not KEY=VALUE"),
        (["steps=3", "steps=4"], "given twice"),
        (["radius_range=[0.6, 0.8"], "not valid JSON"),
        (['style="open'], "not valid JSON"),
        (["x={'a': 1}"], "not valid JSON"),
    ],
)
def test_malformed_options_are_typed(pairs, fragment):
    with pytest.raises(InvalidOptionError) as err:
        parse_options(pairs)
    assert err.value.code == "bad_option" and fragment in err.value.message and err.value.hint


def test_unknown_names_for_the_chosen_pipeline():
    known = option_names("stylize")
    assert known is not None and {"steps", "style", "encoder", "mvdream", "control_scale"} <= known
    assert parse_options(["steps=5", "style=ink"], pipeline="stylize", known=known) == {"steps": 5, "style": "ink"}
    with pytest.raises(InvalidOptionError, match="stylize pipeline has no option 'stpes'") as err:
        parse_options(["stpes=5"], pipeline="stylize", known=known)
    assert "steps" in err.value.hint


def test_every_pipeline_exposes_its_option_names():
    from backend.pipelines import available, synthetic

    for name in [*available(), "synthetic"]:
        names = option_names(name)
        assert names and "style" in names, name
    assert option_names("synthetic") == {"style", *synthetic.DEFAULTS}
    assert option_names("instax") is not None and "sv3d_variant" in option_names("instax")  # type: ignore[operator]
    assert option_names("no_such_pipeline") is None  # a server may offer it: the server checks


@pytest.mark.parametrize("where", [[], ["--connect", "does-not-matter.json"]])
@pytest.mark.parametrize(
    ("option", "fragment"), [("steps", "is not KEY=VALUE"), ("n_gaussianz=5", "has no option 'n_gaussianz'")]
)
def test_generate_rejects_a_bad_option_before_any_work(tmp_path, capsys, where, option, fragment):
    """Both paths of ``generate`` parse options the same way, before reading the photo (which
    does not exist here) or opening a connection file (which does not either)."""
    code = main(
        ["generate", str(tmp_path / "missing.png"), "--out", str(tmp_path / "out"), "--pipeline", "synthetic"]
        + ["--option", option, *where]
    )
    err = capsys.readouterr().err
    assert code == 1 and "error [bad_option]" in err and fragment in err, err
    assert not (tmp_path / "out").exists()
