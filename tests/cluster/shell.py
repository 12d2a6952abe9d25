"""Reading the shell commands that cluster configs and docs run, for tests that check them
against the real CLIs: split a line into simple commands, find a program's argument lists, parse
them with click, and scan text for hard-coded buckets and secrets."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

GUIDE = Path(__file__).resolve().parents[2] / "cluster" / "README.md"
# Stand-ins for the shell variables the commands use, so that their values parse.
SHELL_VARS = {"SUPCON_BUCKET": "test-bucket", "RAY_HEAD_IP": "10.0.0.1", "HOME": "/home/user"}
_SEPARATOR = re.compile(r"[();<>|&]+")
_PREFIXES = {"exec", "nohup", "export"}
_BUCKET = re.compile(r"(s3://|arn:aws:s3:::)([^\s\"'/$]+)")
_SECRETS = {
    "a Ray token (64 hex digits)": re.compile(r"\b[0-9a-f]{64}\b"),
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a credential written as a literal": re.compile(
        r"(?i)(?:RAY_AUTH_TOKEN|auth_token|secret_access_key|PASSWORD|admin_password)[\"']?"
        r"\s*[:=]\s*[\"']?"
        r"[A-Za-z0-9+/_\-]{16,}"
    ),
}


def simple_commands(line: str) -> list[list[str]]:
    """The words of each simple command in a shell line, split at ``; && || | & ( )`` and at
    redirections, quotes removed as the shell would, known variables replaced by stand-ins."""
    line = re.sub(r"\$\{?(\w+)\}?", lambda m: SHELL_VARS.get(m.group(1), m.group(0)), line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if _SEPARATOR.fullmatch(word):
            commands.append([])
        else:
            commands[-1].append(word)
    return [words for words in commands if words]


def invocations(line: str, program: str) -> list[list[str]]:
    """The argument lists ``program`` is run with in ``line``: as a command (after variable
    assignments, ``exec``, ``nohup``), or after the ``--`` of another one (``ray job submit --
    supcon-sweep ...``)."""
    found = []
    for words in simple_commands(line):
        while words and (words[0] in _PREFIXES or re.match(r"\w+=", words[0])):
            words = words[1:]
        for i, word in enumerate(words):
            if word == program and (i == 0 or words[i - 1] == "--"):
                found.append(words[i + 1 :])
    return found


def parse_click(group: click.Group, args: list[str], program: str) -> click.Context:
    """Parse ``args`` the way ``program`` (a click group) would, without running anything:
    unknown subcommands and options, bad values and missing arguments raise."""
    command, name = group, program
    while isinstance(command, click.Group):
        if not args or args[0] not in command.commands:
            raise click.UsageError(f"{name} has no subcommand {args[:1]}")
        command, name, args = command.commands[args[0]], f"{name} {args[0]}", args[1:]
    return command.make_context(name, list(args))


def guide_lines(path: Path = GUIDE) -> list[str]:
    """The shell lines of a Markdown file's ``sh`` blocks: continuations joined, heredoc
    bodies (file contents, not commands) left out."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", path.read_text(), flags=re.S):
        pending, heredoc_end = "", None
        for raw in block.splitlines():
            if heredoc_end is not None:
                heredoc_end = None if raw.strip() == heredoc_end else heredoc_end
                continue
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1]
                continue
            pending = ""
            if heredoc := re.search(r"<<-?\s*'?(\w+)'?", line):
                heredoc_end = heredoc.group(1)
            lines.append(line)
    return lines


def hardcoded_buckets(text: str) -> list[str]:
    """``s3://NAME`` and ``arn:aws:s3:::NAME`` where NAME is written out instead of taken from
    a variable."""
    return [m.group(0) for m in _BUCKET.finditer(text)]


def secret_findings(text: str) -> list[str]:
    """What in ``text`` looks like a secret written out (named, never echoed)."""
    return [what for what, pattern in _SECRETS.items() if pattern.search(text)]
