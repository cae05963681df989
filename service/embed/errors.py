"""The embedding job's error: a run, an index or a curation step that cannot start or continue."""


class EmbedJobError(Exception):
    """Bad settings, a missing extra, an index that does not match its folder: the message says what to change.
    (A folder that cannot be used as asked is :class:`storage.errors.FolderError`.)"""
