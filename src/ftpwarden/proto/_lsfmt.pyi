from collections.abc import Callable, Sequence

from .listing import Entry

def ls_lines(entries: Sequence[Entry], now_secs: int, localtime: bool, owner: Callable[[int], str],
             group: Callable[[int], str], /) -> list[str] | None: ...
def mlsx_lines(entries: Sequence[Entry], fact_bits: int, perm_file: str, perm_dir: str,
               owner: Callable[[int], str], group: Callable[[int], str], /) -> list[str] | None: ...
