"""The error codes of the Ensue wire protocol, as our hub sends them and our client reads them.

JSON-RPC's own codes (-32700 parse error, -32600 invalid request, -32601 method not
found, -32602 invalid params) say the request itself was wrong. Tool refusals use the
server range: -32001 unauthorised, -32003 forbidden, -32004 not found, -32009 conflict
(the key exists, or ``if_match`` did not match), -32013 too large, -32029 rate
limited, -32050 storage unavailable. :data:`TOOL_FAILED` (0) stands for a tool error
whose server gave no code. A per-item error inside a result (``create_memory`` answers
one per item) carries a short text code instead: :data:`ITEM_EXISTS` or
:data:`ITEM_REFUSED`.
"""

from __future__ import annotations

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
UNAUTHORISED = -32001
FORBIDDEN = -32003
NOT_FOUND = -32004
CONFLICT = -32009
TOO_LARGE = -32013
RATE_LIMITED = -32029
UNAVAILABLE = -32050
#: A tool error from a server that named no code.
TOOL_FAILED = 0

#: What a server without a tool answers: an unknown method, or a tools/call it rejects.
NO_SUCH_TOOL = (METHOD_NOT_FOUND, INVALID_PARAMS)
#: Codes that are failures of a tool's execution, sent as MCP ``isError`` results; the
#: rest are protocol errors (the request, the key, the rate or the server), sent as
#: JSON-RPC errors.
TOOL_ERRORS = frozenset({FORBIDDEN, NOT_FOUND, CONFLICT, TOO_LARGE})

ITEM_EXISTS = "exists"
ITEM_REFUSED = "refused"
#: A per-item code as the tool-level code that means the same.
ITEM_CODES = {ITEM_EXISTS: CONFLICT, ITEM_REFUSED: FORBIDDEN}
