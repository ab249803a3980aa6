"""Parsing ``[[rules]]``: each entry checked and turned into a
:class:`~twinproxy.config.model.RuleConfig`.

Apart from the other sections because a rule is the one part of a config with a small language
of its own (a command list, a regex on the arguments, a ``$N`` rewrite template, exactly one
action) and because it is checked against the versions already read (``from`` and ``to``). A
problem inside a rule names the rule as well as the key: an index is easy to miscount in a long
file.

How this module reads, top to bottom: the checks of a rule's own values; the schemas of a rule
and its sub-tables; :func:`parse_rules` and what it calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import EllipsisType
from typing import Any

from twinproxy.config.model import (
    ALL_ARGS,
    RULE_ACTIONS,
    ErrorMapping,
    RuleConfig,
    Substitution,
    VersionConfig,
)
from twinproxy.config.schema import (
    Invalid,
    Key,
    any_string,
    array,
    boolean,
    join_key,
    number,
    regex,
    show_regex,
    show_value,
    subtable,
    table,
    text,
    text_or_texts,
    unknown_version,
)

__all__ = ["parse_rules"]


def true_only(value: Any, key: str) -> bool:
    if boolean(value, key) is not True:
        raise Invalid(key, "ignore = false is not an action: set it to true or remove it")
    return True


def rewrite_word(value: Any, key: str) -> bytes | int | EllipsisType:
    """``$N`` (``$0`` the command, ``$1``... the arguments), ``$*``, ``$$...`` (a literal
    ``$...``) or literal text."""
    word = any_string(value, key)
    if not word.startswith("$"):
        return word.encode()
    if word == "$*":
        return ALL_ARGS
    if word.startswith("$$"):
        return word[1:].encode()
    if word[1:].isdigit() and word[1:].isascii():
        return int(word[1:])
    raise Invalid(key, f"{show_value(word)} is not a reference: use $0 (the command), $1, $2 ... "
                       '(the arguments), $* (all arguments), or $$ for a literal "$"')


SUBSTITUTION = {"pattern": Key(regex), "replace": Key(any_string, "")}
ERROR_MAPPING = {"leader": Key(regex), "follower": Key(regex)}
RULE = {
    "name": Key(text),
    "command": Key(text_or_texts),
    "args": Key(regex, None),
    "from": Key(text, None),
    "to": Key(text, None),
    "ignore": Key(true_only, None),
    "normalize": Key(array(subtable(SUBSTITUTION), min_len=1), None),
    "tolerance": Key(number(at_least=0), None),
    "rewrite": Key(array(rewrite_word, min_len=1), None),
    "map_error": Key(array(subtable(ERROR_MAPPING), min_len=1), None),
}


@contextmanager
def _in_rule(name: str | None) -> Iterator[None]:
    """Say which rule a problem is in: an index is easy to miscount in a long file."""
    try:
        yield
    except Invalid as exc:
        if name is None:
            raise
        raise Invalid(exc.key, f'rule "{name}": {exc.reason}') from None


def _rule(raw: Any, key: str, protocol: str, versions: Mapping[str, VersionConfig]) -> RuleConfig:
    name = raw.get("name") if isinstance(raw, dict) else None
    with _in_rule(name if isinstance(name, str) and name else None):
        values = table(raw, key, RULE)
        commands = []
        many = isinstance(raw["command"], list)
        for i, cmd in enumerate(values["command"]):
            where = join_key(key, "command") + (f"[{i}]" if many else "")
            if len(cmd.split()) > 1:
                first, rest = cmd.split(None, 1)
                raise Invalid(where, f"{show_value(cmd)} is more than a command name; match what "
                              f'follows the command with args: command = "{first}", '
                              f'args = "^{rest}"')
            if cmd != cmd.strip():
                raise Invalid(where, f"{show_value(cmd)} has spaces around the name")
            commands.append(cmd.lower() if protocol == "memcache" else cmd.upper())
        for end in ("from", "to"):
            if values[end] is not None and values[end] not in versions:
                raise Invalid(join_key(key, end), unknown_version(values[end], versions))
        actions = [a for a in RULE_ACTIONS if values[a] is not None]
        if len(actions) != 1:
            listed = ", ".join(RULE_ACTIONS)
            reason = (f"no action: give exactly one of {listed}" if not actions else
                      f"{len(actions)} actions ({' and '.join(actions)}): a rule takes exactly "
                      "one; write one rule per action")
            raise Invalid(key, reason)
        rewrite = values["rewrite"] or ()
        return RuleConfig(
            name=values["name"],
            commands=tuple(commands),
            action=actions[0],
            args=values["args"],
            from_version=values["from"],
            to_version=values["to"],
            ignore=bool(values["ignore"]),
            normalize=tuple(Substitution(s["pattern"], _replacement(s, f"{key}.normalize[{i}]"))
                            for i, s in enumerate(values["normalize"] or ())),
            tolerance=values["tolerance"],
            rewrite=tuple(raw["rewrite"]) if rewrite else (),
            map_error=tuple(ErrorMapping(m["leader"], m["follower"])
                            for m in values["map_error"] or ()),
            rewrite_parts=rewrite,
        )


def _replacement(sub: Mapping[str, Any], key: str) -> bytes:
    """The ``replace`` text, checked against its pattern's groups now rather than at the first
    reply that matches."""
    replace = sub["replace"].encode()
    try:
        sub["pattern"].sub(replace, b"")
    except (re.error, IndexError) as exc:
        raise Invalid(f"{key}.replace", f"invalid replacement {show_regex(sub['replace'])}: {exc}"
                      ) from None
    return replace


def parse_rules(raw: Any, protocol: str, versions: Mapping[str, VersionConfig]
                ) -> tuple[RuleConfig, ...]:
    """The ``rules`` array, checked: commands in ``protocol``'s canonical case, ``from`` and
    ``to`` among ``versions``, names unique.

    Raises:
        Invalid: at the first problem, with its key (``rules[2].normalize[0].pattern``) and,
            once the rule's name is known, the name in the reason.
    """
    if not isinstance(raw, list):
        raise Invalid("rules", f"expected an array of tables ([[rules]]), got {show_value(raw)}")
    rules: list[RuleConfig] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        rule = _rule(entry, f"rules[{i}]", protocol, versions)
        if rule.name in seen:
            raise Invalid(f"rules[{i}].name",
                          f'rule "{rule.name}": duplicate name, rules[{seen[rule.name]}] has it')
        seen[rule.name] = i
        rules.append(rule)
    return tuple(rules)
