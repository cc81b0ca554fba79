"""The ``lightning-kd`` command line as the start-up checks see it: options, the subcommand, ``--key value`` pairs.

This is not a parser of the configuration (jsonargparse is); it only splits the words the way
jsonargparse does, so the checks can look at each key and value, and put a value back changed
(a method's short name replaced by its class path).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: Options that take no value unless written ``--option=value``.
_FLAGS = ("help", "print_config")


@dataclass
class Option:
    """One ``--key value`` (or ``--key=value``, ``-c value``) of the command line.

    Attributes:
        key: the dotted key without dashes (``trainer.max_steps``; ``config`` for ``-c``; ``help`` for ``-h``).
        value: the value, or ``None`` for a flag given alone.
        index: where the value is in the word list (the key's own index for ``--key=value``).
        inline: whether the value was written ``--key=value``.
        append: whether it was written ``--key+=value`` (append to a list).
    """

    key: str
    value: str | None
    index: int
    inline: bool = False
    append: bool = False


@dataclass
class CommandLine:
    """The words of a command line, split.

    Attributes:
        words: the words (``sys.argv[1:]``), which :meth:`replace` changes in place.
        before: the options before the subcommand (``--config``, ``--help``, ``--print_config``).
        subcommand: ``fit`` … (``None`` when no word names one).
        unknown_subcommand: the first positional word when it is not a subcommand.
        options: the options after the subcommand, in order.
        positionals: words after the subcommand that belong to no option.
    """

    words: list[str]
    before: list[Option] = field(default_factory=list)
    subcommand: str | None = None
    unknown_subcommand: str | None = None
    options: list[Option] = field(default_factory=list)
    positionals: list[str] = field(default_factory=list)

    def replace(self, option: Option, value: str) -> None:
        """Put ``value`` in place of ``option``'s value in :attr:`words`."""
        if option.inline:
            self.words[option.index] = self.words[option.index].split("=", 1)[0] + "=" + value
        else:
            self.words[option.index] = value
        option.value = value

    def values(self, key: str) -> list[str]:
        """Every value given for ``key`` after the subcommand, in order."""
        return [o.value for o in self.options if o.key == key and o.value is not None]


def split(words: list[str]) -> CommandLine:
    """Split ``words`` (the arguments after the program name) the way jsonargparse reads them."""
    line = CommandLine(list(words))
    target = line.before
    index = 0
    while index < len(line.words):
        word = line.words[index]
        if word in ("-c", "-h") or word.startswith("--"):
            option, index = _option(line.words, index)
            target.append(option)
        elif line.subcommand is None and line.unknown_subcommand is None and target is line.before:
            if word in SUBCOMMANDS:
                line.subcommand = word
                target = line.options
            else:
                line.unknown_subcommand = word
            index += 1
        else:
            line.positionals.append(word)
            index += 1
    return line


def _option(words: list[str], index: int) -> tuple[Option, int]:
    word = words[index]
    if word == "-c":
        word = "--config"
    if word == "-h":
        word = "--help"
    name, equals, value = word[2:].partition("=")
    append = name.endswith("+")
    name = name.rstrip("+")
    if equals:
        return Option(name, value, index, inline=True, append=append), index + 1
    if name not in _FLAGS and index + 1 < len(words) and not words[index + 1].startswith("--") and words[index + 1] not in ("-c", "-h"):
        return Option(name, words[index + 1], index + 1, append=append), index + 2
    return Option(name, None, index, append=append), index + 1
