"""pipeline.track's flags, defined once: what the rules write, its parser reads back."""

import pytest

from pipeline.track import build_parser
from pipeline.tracking.flags import FLAGS, command_args, command_prefix, dest

pytestmark = pytest.mark.unit


def test_every_flag_the_rules_can_write_is_read_back_by_the_parser():
    values = {dest(flag): ([f"v-{flag}"] if s.get("action") == "append" else f"v-{flag}") for flag, s in FLAGS}
    values |= {"no_tracking": True, "system_metrics_s": 15.0, "tag": ["variant=no_lrn-s0"]}
    parser, _ = build_parser()
    args = parser.parse_args([*command_args(**values), "--", "true"])
    for name, value in values.items():
        assert getattr(args, name) == value, name
    assert args.command == ["--", "true"]


def test_absent_options_write_no_flag_and_a_misspelt_one_is_an_error():
    assert command_args(stage="pca", log="{log}", metrics=None, artifact=[], no_tracking=False) == [
        "run", "--stage", "pca", "--log", "{log}"
    ]  # fmt: skip
    with pytest.raises(TypeError, match="artifacts"):
        command_args(stage="pca", log="x", artifacts=["a"])


def test_the_prefix_leaves_snakemake_placeholders_for_the_rule_to_fill():
    prefix = command_prefix(stage="train", log="{log}", metrics="{output.json}", register="alexnet-demo")
    assert prefix == (
        "python -m pipeline.track run --stage train --log {log} --metrics {output.json} --register alexnet-demo -- "
    )
