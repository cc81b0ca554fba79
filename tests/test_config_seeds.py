"""Every shipped method config fixes its seed, so a run can be repeated exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
METHOD_CONFIGS = sorted(
    p.relative_to(ROOT) for p in (ROOT / "configs").rglob("*.yaml") if "model" in (yaml.safe_load(p.read_text()) or {})
)


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=str)
def test_method_config_sets_an_integer_seed(config):
    seed = yaml.safe_load((ROOT / config).read_text()).get("seed_everything")
    assert isinstance(seed, int) and not isinstance(seed, bool), f"{config}: set `seed_everything: <int>`"
