"""The curation error: a command that cannot run as asked."""


class CurationError(Exception):
    """Bad options, a folder that lacks what a command needs (images, labels, a map), a missing extra: the message
    says what to change. (A folder that cannot be read at all is :class:`storage.errors.FolderError`.)"""
