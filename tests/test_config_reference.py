"""README.md's configuration reference is generated from the typed configs: it lists every
field the loaders accept, and the test fails when a config changed and the README did not."""

from __future__ import annotations

from gemlora.config_reference import README, readme_with_reference, reference
from gemlora.serve.config import ServeConfig
from gemlora.train.config import TrainConfig


def test_the_readme_reference_is_current():
    readme = README.read_text()
    assert readme_with_reference(readme) == readme, (
        "README.md's config reference is stale: run `python -m gemlora.config_reference --write`"
    )


def test_every_field_of_both_configs_is_in_the_reference():
    text = reference()
    for config in (TrainConfig, ServeConfig):
        for section, field in config.model_fields.items():
            model = field.annotation
            nested = getattr(model, "model_fields", None) or {}
            for name in nested:
                assert f"`{section}.{name}" in text, f"{section}.{name}"
    assert "`gateway.images.fetch.limits.max_pixels`" in text
    assert "`registry.cache_dir` | Path | `$GEMLORA_HOME/adapter-cache`" in text
