"""One registry idiom for encoders, architectures and pretext tasks (timm's ``register_model``): a factory
(a function or a class) is added with the ``@REGISTRY.register`` decorator under its ``name`` attribute or
its ``__name__``, and looked up by name; an unknown name is a ValueError that lists the known ones."""
from __future__ import annotations


class Registry(dict):
    """Name -> factory. ``kind`` names what it holds in messages; ``check(factory)`` (optional) raises for
    a factory that does not follow its kind's protocol."""

    def __init__(self, kind: str, check=None):
        super().__init__()
        self.kind, self.check = kind, check

    def register(self, factory=None, *, name: str | None = None):
        """Decorator: ``@REG.register`` or ``@REG.register(name="...")``; returns the factory unchanged."""
        def add(f):
            key = name or getattr(f, "name", None) or f.__name__
            if self.check is not None:
                self.check(f)
            if key in self and self[key] is not f:
                raise ValueError(f"two {self.kind}s are called {key!r}: {self[key].__name__} and {f.__name__}")
            self[key] = f
            return f
        return add(factory) if factory is not None else add

    def lookup(self, name: str):
        """The factory registered as ``name`` (ValueError naming the known ones otherwise)."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}: expected one of {self.names()}")
        return self[name]

    def names(self) -> list[str]:
        return sorted(self)
