"""What every aggregation rule is: a ``Rule`` subclass with its name, its own options, its label for the
analysis and whether it has a staleness threshold. Defining the subclass registers it.

Nothing here imports PyTorch (the CLI reads the registry for its choices and flags); a rule's
arithmetic (``self.ops``, arithmetic.py) is imported when a rule is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

StateDict = dict  # name -> torch.Tensor
REGISTRY: dict[str, type[Rule]] = {}


@dataclass
class NoOptions:
    """A rule without options of its own."""


class Rule:
    """How one server's result changes the global model. ``prepare`` runs outside the state's lock (what
    needs only the server's own snapshot and result); ``combine`` under it, returning the new global model
    or None when the result was only buffered.

    A subclass sets ``name`` (the ``--aggregation`` value), ``Options`` (a dataclass whose fields, with
    their defaults and ``# help`` comments, become the client's flags; names must not clash with another
    rule's or the client's) and ``has_threshold`` (False: the rule brings its own barrier, the SSP gate
    runs at S=0 and a sweep runs it once per cell, not once per S)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    has_threshold: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.name or cls.name in REGISTRY:
            raise ValueError(f"rule {cls.__name__} needs a name of its own (got {cls.name!r})")
        REGISTRY[cls.name] = cls

    def __init__(self, n_servers: int, options: Any = None):
        from asyncfl.core.rules import arithmetic  # the tensors' code, loaded only when a rule is built

        self.ops = arithmetic
        self.n_servers = n_servers
        self.options = options if options is not None else self.Options()
        # The S the SSP gate runs with: the rule owns it (rules.build sets it from the flag; a rule with a
        # barrier of its own runs at 0).
        self.staleness = 0

    def prepare(self, snapshot: StateDict, new: StateDict, n_samples: int):
        return new

    def combine(self, global_weights: StateDict, prepared, updates_behind: int) -> StateDict | None:
        raise NotImplementedError

    def staleness_threshold(self, requested: int) -> int:
        """The S the gate runs with when the user asked for ``requested``."""
        return requested if self.has_threshold else 0

    @classmethod
    def refuse(cls, args) -> str | None:
        """Why the client's other settings cannot go with this rule (None: they can)."""
        return None

    @classmethod
    def options_from(cls, args) -> Any:
        return cls.Options(**{f.name: getattr(args, f.name) for f in fields(cls.Options)})

    def describe(self) -> dict:
        """config.json's ``aggregation`` record: the name and every option."""
        return {"aggregation": self.name, **asdict(self.options)}

    @classmethod
    def label(cls, record: dict) -> str:
        """The analysis's name for a configuration: 'name' or 'name(option=value,...)' over every option, so
        runs with different options never merge."""
        values = [f"{f.name}={record[f.name]:g}" if isinstance(record.get(f.name), float) else f"{f.name}={record.get(f.name)}"
                  for f in fields(cls.Options)]
        return f"{cls.name}({','.join(values)})" if values else cls.name
