"""The MCP server: Archivist's search, answers and documents as Model Context Protocol tools and a resource.

`archivist mcp` serves it on stdio (the local user, no key, every collection) or, with `--http`, over streamable
HTTP, where every request carries an Archivist API key as a bearer token and reaches only that key's collections.
"""
