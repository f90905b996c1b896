"""A tiny name -> factory registry, so that configs build components by name.

One registry per kind of component (datasets, modality readers, encoders, ...); no
``if name == ...`` chains anywhere else.

Each registry may hold a **contract**: what a registration must be (a base class the registered
class must derive from, or a check returning the problem). A registration that breaks it is
refused at ``register`` time with a ``TypeError`` naming the registry, the name and what is
missing, not found minutes later as an ``AttributeError`` deep in a training run. A second check,
``check_built``, looks at what ``build`` returns (what a factory function makes cannot be checked
before it is called). Every entry has a one-line description (``description=``, else the first
line of the registered object's docstring) for ``actdistill list``.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: A contract: a base class (a registered class must derive from it) or ``check(obj) -> problem``,
#: ``None`` when ``obj`` is fine.
Contract = type | Callable[[Any], str | None]


def first_line(obj: Any) -> str:
    """The first sentence of ``obj``'s own docstring (not one inherited from a base class) on one
    line, without reST literal markers, or ``""``."""
    doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return ""
    para = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split()).replace("``", "")
    depth = 0
    for i, ch in enumerate(para):  # the first full stop outside brackets that ends a sentence
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "." and depth == 0 and (i + 1 == len(para) or para[i + 1] == " ") \
                and not re.search(r"(\be\.g|\bi\.e|\betc|\bal)$", para[:i]):
            return para[: i + 1]
    return para


def spec_factory_problem(factory: Any, spec_type: type, register: str,
                         check: Callable[[Any], str | None] | None = None) -> str | None:
    """The contract of a registry whose entries are no-argument factories of a ``spec_type``
    (datasets, rows): the problem with ``factory`` as one line, or None. ``register`` names the
    function users call instead of registering a bare spec; ``check`` validates the built spec."""
    name = spec_type.__qualname__
    if isinstance(factory, spec_type):
        return f"register a {name} with {register}(spec), not .register"
    if not callable(factory):
        return f"{factory!r} is not callable"
    try:
        spec = factory()
    except TypeError as err:
        return f"an entry is a function of no arguments returning its {name} ({err})"
    if not isinstance(spec, spec_type):
        return f"expected a {name}, got {type(spec).__qualname__}"
    return check(spec) if check is not None else None


def _qualname(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    module = getattr(obj, "__module__", None)
    return f"{module}.{name}" if module else str(name)


class Registry(Generic[T]):
    """Named factories of one kind of component.

    ``contract``: a base class or a check ``obj -> problem | None`` applied to every registration;
    ``check_built``: a check ``product -> problem | None`` applied to what :meth:`build` returns;
    ``what``: one sentence of what an entry must be, appended to a contract error.
    """

    def __init__(self, kind: str, contract: Contract | None = None,
                 check_built: Callable[[Any], str | None] | None = None, what: str = "") -> None:
        self.kind = kind
        self.contract = contract
        self.check_built = check_built
        self.what = what
        self._items: dict[str, Callable[..., T]] = {}
        self._descriptions: dict[str, str] = {}

    def _refuse(self, name: str, problem: str) -> TypeError:
        hint = f" ({self.what})" if self.what else ""
        return TypeError(f"cannot register {self.kind} {name!r}: {problem}{hint}")

    def check(self, name: str, obj: Any) -> None:
        """Raise ``TypeError`` when ``obj`` does not meet this registry's contract."""
        contract = self.contract
        if contract is None:
            if not callable(obj):
                raise self._refuse(name, f"{obj!r} is not callable")
            return
        if isinstance(contract, type):
            if not (inspect.isclass(obj) and issubclass(obj, contract)):
                what = _qualname(obj) if inspect.isclass(obj) else repr(obj)
                raise self._refuse(name, f"{what} is not a subclass of {_qualname(contract)}")
            return
        problem = contract(obj)
        if problem:
            raise self._refuse(name, problem)

    def register(self, name: str, description: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator adding ``obj`` as ``name`` (checked against the contract; a taken name is a
        ``KeyError``). ``description``: one line for ``actdistill list`` (default: the docstring's
        first line)."""
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered (by {_qualname(self._items[name])})")
            self.check(name, obj)
            self._items[name] = obj
            if description is not None:
                self._descriptions[name] = " ".join(description.split())
            else:
                self._descriptions.pop(name, None)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plugin being reloaded, a test cleaning up); unknown names are ignored."""
        self._items.pop(name, None)
        self._descriptions.pop(name, None)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(self._items))
            raise KeyError(f"unknown {self.kind} {name!r}{hint} (known: {known})") from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> T:
        out = self.get(name)(*args, **kwargs)
        if self.check_built is not None:
            problem = self.check_built(out)
            if problem:
                raise TypeError(f"{self.kind} {name!r} ({_qualname(self._items[name])}) built {problem}")
        return out

    def describe(self, name: str) -> str:
        """The entry's one-line description: the registered one, else its docstring's first line."""
        if name in self._descriptions:
            return self._descriptions[name]
        return first_line(self.get(name))

    def entries(self) -> list[tuple[str, str]]:
        """``(name, description)`` of every entry, sorted by name."""
        return [(n, self.describe(n)) for n in self.names()]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
