"""CLI sub-commands, one module each (see ``fewstep.cli``)."""
