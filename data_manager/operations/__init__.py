"""One module per operation on datasets: what ``DataManager`` (data_manager/api.py) runs for each command.

Each takes the :class:`~data_manager.api.DataManager` it works for (config, storages, state, job runner)
and runs as a job through :class:`~data_manager.runner.JobRunner` where it changes anything.
"""

from . import backup, cleanup, config_check, copy, restore, status, verify

__all__ = ["backup", "cleanup", "config_check", "copy", "restore", "status", "verify"]
