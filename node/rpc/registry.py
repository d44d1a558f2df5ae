"""Named RPC methods with signature-driven arity and type checking, and ``help``.

The registry knows nothing about blockchains or HTTP: :class:`node.rpc.server.RPCServer`
calls :meth:`MethodRegistry.call` for each request, and the node's methods are registered
by :func:`node.rpc.methods.build_registry`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

from node.rpc.errors import INVALID_PARAMS, METHOD_NOT_FOUND, RPCError

# --------------------------------------------------------------------------------------------
# Parameter type checking
# --------------------------------------------------------------------------------------------

_EMPTY = inspect.Parameter.empty
_NONE_TYPE = type(None)
_POSITIONAL_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    """Human-readable name of an annotation, e.g. ``int | None``, ``list[str]``."""
    if tp is _EMPTY or tp is Any:
        return "any"
    if tp is None or tp is _NONE_TYPE:
        return "None"
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join(_type_name(a) for a in args)}]" if args else base
    return getattr(tp, "__name__", str(tp))


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def _describe_value(value: Any) -> str:
    if value is None:
        return "null"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{_json_type_name(value)} ({text})"


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` (possibly converted, e.g. int → float) or raise ``_Mismatch``.

    Only simple JSON-ish annotations are enforced; anything else is accepted as-is.
    """
    if tp is _EMPTY or tp is Any or tp is object:
        return value
    if tp is None or tp is _NONE_TYPE:
        if value is None:
            return None
        raise _Mismatch
    if _is_union(tp):
        return _coerce_union(value, tp)
    scalar = _SCALARS.get(tp) if isinstance(tp, type) else None
    if scalar is not None:
        return scalar(value)
    origin = typing.get_origin(tp)
    if tp is list or origin is list:
        return _coerce_list(value, tp)
    if tp is dict or origin is dict:
        return _coerce_dict(value, tp)
    if origin is Literal:
        return _coerce_literal(value, tp)
    return value  # unknown / complex annotation: not enforced


def _coerce_union(value: Any, tp: Any) -> Any:
    for arg in typing.get_args(tp):
        try:
            return _coerce(value, arg)
        except _Mismatch:
            continue
    raise _Mismatch


def _coerce_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Mismatch


def _coerce_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _Mismatch


def _coerce_float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _Mismatch


def _coerce_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Mismatch


_SCALARS: dict[type, Callable[[Any], Any]] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    str: _coerce_str,
}


def _coerce_list(value: Any, tp: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Mismatch
    args = typing.get_args(tp)
    if args:
        return [_coerce(v, args[0]) for v in value]
    return value


def _coerce_dict(value: Any, tp: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise _Mismatch
    args = typing.get_args(tp)
    if len(args) == 2:
        return {k: _coerce(v, args[1]) for k, v in value.items()}
    return value


def _coerce_literal(value: Any, tp: Any) -> Any:
    for allowed in typing.get_args(tp):
        if type(allowed) is type(value) and allowed == value:
            return value
    raise _Mismatch


def _accepts_none(tp: Any) -> bool:
    try:
        _coerce(None, tp)
    except _Mismatch:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class _Param:
    name: str
    kind: inspect._ParameterKind
    annotation: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is _EMPTY

    def describe(self) -> str:
        req = "required" if self.required else f"optional, default={_json_default(self.default)}"
        return f"{self.name} ({_type_name(self.annotation)}, {req})"


def _json_default(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


@dataclasses.dataclass
class _Method:
    name: str
    func: Callable[..., Any]
    help: str
    category: str
    positional: list[_Param]
    keyword_only: list[_Param]
    var_positional: _Param | None
    var_keyword: _Param | None
    bound: tuple[Any, ...] = ()  # leading arguments supplied by the registry (the node)

    @property
    def all_params(self) -> list[_Param]:
        return self.positional + self.keyword_only

    def signature_line(self) -> str:
        parts = [self.name]
        required = [p.name for p in self.all_params if p.required]
        optional = [
            f"{p.name}={_json_default(p.default)}" for p in self.all_params if not p.required
        ]
        parts.extend(required)
        if self.var_positional is not None:
            optional.append(f"{self.var_positional.name}...")
        if optional:
            parts.append("( " + " ".join(optional) + " )")
        return " ".join(parts)

    def arity_text(self) -> str:
        n_req = sum(1 for p in self.positional if p.required)
        n_all = len(self.positional)
        if self.var_positional is not None:
            desc = f"at least {n_req} argument{'' if n_req == 1 else 's'}"
        elif n_all == 0:
            return "takes no arguments"
        elif n_req == n_all:
            desc = f"{n_req} argument{'' if n_req == 1 else 's'}"
        else:
            desc = f"{n_req} to {n_all} arguments"
        names = ", ".join(p.name for p in self.positional)
        return f"takes {desc} ({names})" if names else f"takes {desc}"


_CATEGORY_ATTR = "__rpc_category__"
_F = typing.TypeVar("_F", bound=Callable[..., Any])


def rpc_method(func: _F) -> _F:
    """Mark ``func`` as an RPC method, for :meth:`MethodRegistry.register_module`.

    The method is named after the function, listed by ``help`` in the category named after
    its module (``node.rpc.methods.wallet`` → ``== Wallet ==``), and its docstring is its help
    text. The first parameter receives the object bound at registration (the node); the
    others are the RPC parameters, checked and converted according to their annotations (see
    :class:`MethodRegistry`). ``func`` may be ``async``. Returns ``func`` unchanged otherwise.
    """
    setattr(func, _CATEGORY_ATTR, func.__module__.rpartition(".")[2])
    return func


class MethodRegistry:
    """Named RPC methods with signature-based arity and type checking.

    ``func`` may be a plain function or a coroutine function (or any callable returning an
    awaitable). Sync functions run directly on the event loop, so they must be quick.
    Parameter annotations of ``int``, ``float``, ``str``, ``bool``, ``list``/``list[X]``,
    ``dict``/``dict[str, X]``, ``Literal[...]``, unions and ``X | None`` are enforced (``bool`` is
    not accepted as ``int``; ``int`` is accepted and converted where ``float`` is expected);
    other annotations are not checked.

    A built-in ``help [command]`` method is registered unless ``builtin_help=False``.
    """

    def __init__(self, builtin_help: bool = True) -> None:
        self._methods: dict[str, _Method] = {}
        if builtin_help:
            self.register("help", self._help, category="control")

    # -- registration ---------------------------------------------------------------------
    def register(
        self,
        name: str,
        func: Callable[..., Any],
        help: str | None = None,
        *,
        category: str = "misc",
        replace: bool = False,
        bound: Sequence[Any] = (),
    ) -> None:
        """Register ``func`` as RPC method ``name``. ``help`` defaults to the docstring.

        ``bound`` values are passed as ``func``'s first positional arguments on every call;
        those parameters are not RPC parameters (not counted, checked or shown in ``help``).
        """
        if not isinstance(name, str) or not name:
            raise ValueError("method name must be a non-empty string")
        if name in self._methods and not replace:
            raise ValueError(f"RPC method already registered: {name}")
        sig = inspect.signature(func)
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # unresolvable forward refs: fall back to raw annotations
            hints = {}
        positional: list[_Param] = []
        keyword_only: list[_Param] = []
        var_positional: _Param | None = None
        var_keyword: _Param | None = None
        for p in sig.parameters.values():
            ann = hints.get(p.name, p.annotation)
            if isinstance(ann, str):
                ann = _EMPTY  # unresolved string annotation: don't enforce
            param = _Param(p.name, p.kind, ann, p.default)
            if p.kind in _POSITIONAL_KINDS:
                positional.append(param)
            elif p.kind is inspect.Parameter.KEYWORD_ONLY:
                keyword_only.append(param)
            elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                var_positional = param
            else:
                var_keyword = param
        if len(bound) > len(positional):
            raise ValueError(f"{name}: more bound arguments than positional parameters")
        positional = positional[len(bound) :]
        text = help if help is not None else (inspect.getdoc(func) or "")
        self._methods[name] = _Method(
            name, func, text, category, positional, keyword_only, var_positional, var_keyword,
            tuple(bound),
        )

    def register_module(self, module: types.ModuleType, *bound: Any) -> None:
        """Register every :func:`rpc_method` function defined in ``module``, under its own
        name and category, with ``bound`` as its first arguments (see :meth:`register`)."""
        for func in vars(module).values():
            category = getattr(func, _CATEGORY_ATTR, None)
            if category is None or getattr(func, "__module__", None) != module.__name__:
                continue
            try:
                typing.get_type_hints(func)
            except Exception as exc:  # register() would silently leave the parameters unchecked
                raise TypeError(
                    f"RPC method {func.__name__}: annotations do not resolve: {exc}"
                ) from exc
            self.register(func.__name__, func, category=category, bound=bound)

    def method(
        self, name: str | None = None, help: str | None = None, *, category: str = "misc"
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`register` (name defaults to the function name)."""

        def deco(func: Callable[..., Any]) -> Callable[..., Any]:
            self.register(name or func.__name__, func, help, category=category)
            return func

        return deco

    def unregister(self, name: str) -> None:
        self._methods.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._methods)

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __len__(self) -> int:
        return len(self._methods)

    # -- calling ----------------------------------------------------------------------------
    async def call(self, name: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
        """Check ``params`` against method ``name`` and call it.

        Raises :class:`RPCError` (METHOD_NOT_FOUND / INVALID_PARAMS, or whatever the method
        raises). Other exceptions from the method propagate unchanged.
        """
        m = self._methods.get(name)
        if m is None:
            raise RPCError(METHOD_NOT_FOUND, f"Method not found: {name}")
        args, kwargs = self._bind(m, params if params is not None else [])
        result = m.func(*m.bound, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _bind(
        self, m: _Method, params: Sequence[Any] | Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        extra_args: list[Any] = []
        extra_kwargs: dict[str, Any] = {}
        if isinstance(params, Mapping):
            provided, extra_kwargs = self._named(m, params)
        elif isinstance(params, Sequence) and not isinstance(params, str | bytes):
            provided, extra_args = self._positional(m, params)
        else:
            raise RPCError(INVALID_PARAMS, "params must be an array or an object")

        # Positional slots are filled up to the last one provided (gaps get their default),
        # so named calls work for positional-only parameters too.
        last = max((i for i, p in enumerate(m.positional) if p.name in provided), default=-1)
        args: list[Any] = []
        for p in m.positional[: last + 1]:
            if p.name in provided:
                args.append(self._check(m, p, provided[p.name]))
            else:
                args.append(p.default)
        args.extend(extra_args)
        kwargs: dict[str, Any] = {}
        for p in m.keyword_only:
            if p.name in provided:
                kwargs[p.name] = self._check(m, p, provided[p.name])
        kwargs.update(extra_kwargs)
        return args, kwargs

    def _named(
        self, m: _Method, params: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Params given by name → (values of known parameters, checked extra **kwargs)."""
        provided: dict[str, Any] = {}
        extra_kwargs: dict[str, Any] = {}
        known = {p.name: p for p in m.all_params}
        for key, value in params.items():
            if key in known:
                provided[key] = value
            elif m.var_keyword is not None:
                extra_kwargs[key] = self._check(m, m.var_keyword, value, label=key)
            else:
                raise RPCError(INVALID_PARAMS, f"{m.name}: unknown named parameter '{key}'")
        for p in m.all_params:
            if p.required and p.name not in provided:
                raise RPCError(
                    INVALID_PARAMS,
                    f"{m.name} missing required parameter '{p.name}' ({m.arity_text()})",
                )
        return provided, extra_kwargs

    def _positional(
        self, m: _Method, params: Sequence[Any]
    ) -> tuple[dict[str, Any], list[Any]]:
        """Params given by position → (values of named parameters, checked extra *args)."""
        given = len(params)
        n_required = sum(1 for p in m.positional if p.required)
        if (given > len(m.positional) and m.var_positional is None) or given < n_required:
            raise RPCError(INVALID_PARAMS, f"{m.name} {m.arity_text()}, {given} given")
        provided = {p.name: value for p, value in zip(m.positional, params, strict=False)}
        extra_args: list[Any] = []
        if m.var_positional is not None:
            extra_args = [
                self._check(m, m.var_positional, v, label=f"{m.var_positional.name}[{i}]")
                for i, v in enumerate(params[len(m.positional) :])
            ]
        for p in m.keyword_only:
            if p.required:
                raise RPCError(
                    INVALID_PARAMS,
                    f"{m.name} missing required parameter '{p.name}' (pass params by name)",
                )
        return provided, extra_args

    @staticmethod
    def _check(m: _Method, p: _Param, value: Any, label: str | None = None) -> Any:
        if value is None and not p.required and not _accepts_none(p.annotation):
            return p.default  # bitcoind: null for an optional argument means "use default"
        try:
            return _coerce(value, p.annotation)
        except _Mismatch:
            raise RPCError(
                INVALID_PARAMS,
                f"{m.name}: parameter '{label or p.name}' must be {_type_name(p.annotation)},"
                f" got {_describe_value(value)}",
            ) from None

    # -- help -------------------------------------------------------------------------------
    def help_text(self, command: str | None = None) -> str:
        if command is None:
            by_cat: dict[str, list[_Method]] = {}
            for m in self._methods.values():
                by_cat.setdefault(m.category, []).append(m)
            blocks = []
            for cat in sorted(by_cat):
                lines = [f"== {cat.capitalize()} =="]
                lines.extend(m.signature_line() for m in sorted(by_cat[cat], key=lambda x: x.name))
                blocks.append("\n".join(lines))
            return "\n\n".join(blocks)
        m = self._methods.get(command)
        if m is None:
            return f"help: unknown command: {command}"
        out = [m.signature_line()]
        if m.help:
            out += ["", m.help]
        if m.all_params:
            out += ["", "Arguments:"]
            out += [f"{i}. {p.describe()}" for i, p in enumerate(m.all_params, 1)]
        return "\n".join(out)

    def _help(self, command: str | None = None) -> str:
        """List all commands, or get help for a specified command."""
        return self.help_text(command)
