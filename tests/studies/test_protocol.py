"""The study contract: every study implements it explicitly and is registered by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustlab.errors import UserError
from robustlab.studies import load_study
from robustlab.studies.config import read_yaml
from robustlab.studies.protocol import Study
from robustlab.studies.registry import STUDIES, get_study
from robustlab.studies.study import PRESETS_DIR


def test_every_registered_study_implements_the_protocol() -> None:
    assert set(STUDIES) == {"leaf", "layer-transfer", "targeted-face", "adversarial-regularisation"}
    for kind, study in STUDIES.items():
        assert isinstance(study, Study) and study.kind == kind
        # the config type pins the YAML's `study:` key to this study
        assert study.config_type.model_fields["study"].annotation.__args__ == (kind,)


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
def test_every_preset_loads_into_its_studys_config_and_has_steps(preset: str) -> None:
    loaded = load_study(preset)
    kind = read_yaml(PRESETS_DIR / f"{preset}.yaml")["study"]
    assert loaded.definition is STUDIES[kind]
    assert isinstance(loaded.config, loaded.definition.config_type)
    names = [step.name for step in loaded.definition.steps(loaded.config)]
    assert names[0] == "data" and len(set(names)) == len(names)


def test_a_study_missing_part_of_the_contract_cannot_be_made() -> None:
    class Incomplete(Study):  # type: ignore[type-arg]
        kind = "incomplete"

        def steps(self, config):  # type: ignore[no-untyped-def]
            return []

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_unknown_study_kind_is_one_line_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^x\.yaml: unknown study 'lef' \(did you mean 'leaf'"):
        get_study("lef", "x.yaml")


def test_the_studys_own_check_runs_at_load_time() -> None:
    with pytest.raises(UserError, match=r"^leaf\.yaml: surrogate: unknown model 'nobody'"):
        load_study("leaf", ["surrogate=nobody"])
