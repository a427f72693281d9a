"""One module per op family; each exposes `cases(quick: bool, backends: tuple) -> list[Case]`."""
