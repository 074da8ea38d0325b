"""XLA's static memory of a compiled program, one definition for every benchmark."""

from __future__ import annotations


def buffer_bytes(compiled) -> int | None:
    """Arguments + outputs - aliased + temporaries of a compiled program.

    ``compiled`` is what ``jax.jit(f).lower(...).compile()`` returns. This is
    XLA's static buffer assignment: exact for what XLA allocates, without the
    runtime's own overhead. None where the backend gives no memory analysis.
    """
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )
