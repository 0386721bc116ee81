"""Progress output shared by the management commands that pretrain bases."""

from workers.engine.base_family import ConsoleProgress


def progress_bar(stdout, label: str) -> ConsoleProgress:
    """A bar redrawn in place on a terminal; a line every ten seconds in a log file."""
    if stdout.isatty():
        return ConsoleProgress(label, write=lambda line: stdout.write(line, ending=""), end="\n")
    return ConsoleProgress(label, write=lambda line: stdout.write(line.lstrip("\r")), every=10)
