"""Errors of the export package.

    ExportError     bad input or an export that cannot be done (missing files, a base that does
                    not fit the adapter, a feature the target cannot run); the message says what
                    to do. The CLI prints it and exits with status 2.
"""


class ExportError(Exception):
    pass
