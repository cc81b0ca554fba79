"""A method's own knobs as one object, declared once: in the method's constructor.

A reusable intermediate loss is an ``…Intermediate`` ``nn.Module`` built from a ``…Settings``
object (TinyBERT's layer-wise terms, MiniLM's attention relations, …). The method that owns the loss
takes the knobs as its usual flat, documented keyword arguments (what its YAML and ``--help`` show),
and MixBaseline, which composes several such losses, takes the same knobs as one block per method
(``tinybert: {terms: […]}``). :func:`method_settings` makes that block's dataclass from the method's
signature and docstring, so each knob, its type, default and description are written once:

.. code-block:: python

    class TinyBERT(DistillationModule):
        def __init__(self, *, terms=..., layer_map="uniform", reduction="masked_mean", prediction=None, **kwargs):
            super().__init__(prediction=prediction, **kwargs)
            self.intermediate = TinyBERTIntermediate(TinyBERTSettings.from_arguments(locals()), ...)

    TinyBERTSettings = method_settings(TinyBERT, "TinyBERTSettings", check=check_tinybert_settings)
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import sys
import typing
from collections.abc import Callable, Iterable
from typing import Any

#: Arguments that are never a settings field: the prediction loss (its own block everywhere) and the
#: base class's arguments, which arrive through ``**kwargs``.
DEFAULT_EXCLUDED = ("prediction",)


class MethodSettings:
    """Base of the dataclasses :func:`method_settings` makes."""

    #: The method whose keyword arguments the fields are.
    method: typing.ClassVar[type]

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> MethodSettings:
        """The settings among ``arguments`` (a constructor's ``locals()``); other names are ignored."""
        return cls(**{f.name: copy.deepcopy(arguments[f.name]) for f in dataclasses.fields(cls) if f.name in arguments})

    def arguments(self) -> dict[str, Any]:
        """The settings as the method's keyword arguments (``Method(**settings.arguments(), …)``)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def method_settings(
    method: type,
    name: str,
    *,
    exclude: Iterable[str] = DEFAULT_EXCLUDED,
    check: Callable[[Any], None] | None = None,
) -> type:
    """A dataclass whose fields are ``method``'s own keyword-only constructor arguments.

    Args:
        method: the method class; its ``__init__`` declares the knobs (types, defaults) and its
            docstring's ``Args:`` section describes them.
        name: the dataclass's name; assign it to a module-level name of the same spelling in
            ``method``'s module, so checkpoints (which pickle settings) and jsonargparse find it.
        exclude: arguments that are not settings (default: ``prediction``).
        check: validation run on every instance (``__post_init__``); raise ``ValueError`` on a bad value.

    Returns:
        A dataclass (subclass of :class:`MethodSettings`) with one field per argument, in the
        signature's order, the same defaults (lists and other mutable values copied per instance)
        and an ``Attributes:`` docstring taken from the method's ``Args:``.
    """
    excluded = set(exclude)
    signature = inspect.signature(method.__init__)
    hints = typing.get_type_hints(method.__init__, globalns=vars(sys.modules[method.__module__]))
    descriptions = _argument_descriptions(inspect.getdoc(method) or "")
    fields, documented = [], []
    for parameter in signature.parameters.values():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or parameter.name in excluded:
            continue
        if parameter.default is inspect.Parameter.empty:
            raise TypeError(f"{method.__name__}.{parameter.name} has no default; a settings field needs one.")
        fields.append((parameter.name, hints[parameter.name], _field(parameter.default)))
        documented.append(f"    {parameter.name}: {descriptions.get(parameter.name, '')}".rstrip())
    namespace: dict[str, Any] = {"method": method}
    if check is not None:
        namespace["__post_init__"] = lambda self: check(self)
    settings = dataclasses.make_dataclass(name, fields, bases=(MethodSettings,), namespace=namespace)
    settings.__module__ = method.__module__
    settings.__qualname__ = name
    settings.__doc__ = (
        f"{method.__name__}'s own arguments as one object (MixBaseline's block for it, and what its "
        f"intermediate loss is built from); see :class:`{method.__name__}`.\n\nAttributes:\n" + "\n".join(documented) + "\n"
    )
    return settings


def _field(default: Any) -> dataclasses.Field:
    if isinstance(default, (int, float, str, bool, type(None))):
        return dataclasses.field(default=default)
    return dataclasses.field(default_factory=lambda: copy.deepcopy(default))


_ARG = re.compile(r"^(\s+)(\*{0,2}\w+)(?: \([^)]*\))?: ?(.*)$")


def _argument_descriptions(docstring: str) -> dict[str, str]:
    """``{argument: description}`` of a Google-style ``Args:`` section (continuation lines joined)."""
    found: dict[str, str] = {}
    lines = docstring.splitlines()
    if "Args:" not in (line.strip() for line in lines):
        return found
    start = [line.strip() for line in lines].index("Args:") + 1
    indent, current = None, None
    for line in lines[start:]:
        if line.strip() and not line.startswith(" "):
            break  # the next section
        match = _ARG.match(line)
        if match and (indent is None or len(match[1]) == indent):
            indent, current = len(match[1]), match[2]
            found[current] = match[3].strip()
        elif current is not None and line.strip():
            found[current] = f"{found[current]} {line.strip()}"
    return found
