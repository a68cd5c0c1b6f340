"""The README names what exists: every setting in its Configuration table (and nothing there
that is not a setting), every command and option of `renderfarm`, every route."""

from __future__ import annotations

import re
from pathlib import Path

from shared.config import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def section(title: str) -> str:
    """The README's `## title` section, up to the next heading of that level."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def documented_settings() -> set[str]:
    """The variables the Configuration section names in backticks: `RENDERFARM_X`, and
    `RENDERFARM_{A,B}_X` with the `..._Y` beside it (each of A, B with X, then with Y)."""
    names: set[str] = set()
    prefixes: list[str] = []
    for quoted in re.findall(r"`([^`]+)`", section("Configuration")):
        if braced := re.fullmatch(r"(RENDERFARM_)\{([A-Z,]+)\}(_[A-Z_]+)", quoted):
            prefixes = [braced[1] + part for part in braced[2].split(",")]
            names |= {p + braced[3] for p in prefixes}
        elif rest := re.fullmatch(r"\.\.\.(_[A-Z_]+)", quoted):
            names |= {p + rest[1] for p in prefixes}
        elif re.fullmatch(r"RENDERFARM_[A-Z0-9_]+", quoted):
            names.add(quoted)
    return names


def test_every_setting_is_in_the_configuration_table_and_only_settings_are():
    settings = {f"RENDERFARM_{name.upper()}" for name in Settings.model_fields}
    documented = documented_settings()
    assert settings - documented == set(), "settings the README's Configuration leaves out"
    assert documented - settings == set(), "named in Configuration, but not a setting"


def test_every_command_and_option_is_in_the_command_section():
    import argparse

    from renderfarm.cli import build_parser

    text = section("The `renderfarm` command")
    missing = []

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if not re.search(rf"`(renderfarm )?({' '.join(words)} )?{name}\b", text):
                        missing.append(" ".join((*words, name)))
                    walk(sub, (*words, name))
            for option in action.option_strings:
                named = re.search(rf"{re.escape(option)}\b", text)
                if option.startswith("--") and option != "--help" and not named:
                    missing.append(f"{' '.join(words)} {option}")

    walk(build_parser(), ())
    assert missing == [], f"the README's command section leaves out {missing}"


def test_every_route_is_in_the_readme(app_rules):
    """Each route of /api/v1 and /metrics (method and path, `<...>` standing for any
    parameter) is in the README's tables, and each /sdapi/v1 endpoint in its SD-WebUI
    section."""
    from dashboard.sdapi import PREFIX

    def shape(path: str) -> str:
        return re.sub(r"<[^>]*>", "<>", path)

    documented = {
        (method, shape(path))
        for method, path in re.findall(r"`(GET|POST|DELETE) (/[^` ?]*)", README)
    }
    webui = section("The SD-WebUI API (`/sdapi/v1`)")
    missing = []
    for rule in app_rules:
        if not rule.rule.startswith(("/api/v1", "/metrics", PREFIX)):
            continue  # the dashboard's pages
        if rule.rule.startswith(PREFIX):  # `png-info`, `POST txt2img`, `GET/POST options`
            name = re.escape(rule.rule.removeprefix(PREFIX + "/"))
            if not re.search(rf"`(?:[A-Z/]+ )?{name}`", webui):
                missing.append(rule.rule)
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if (method, shape(rule.rule)) not in documented:
                missing.append(f"{method} {rule.rule}")
    assert missing == [], f"the README leaves out {missing}"
