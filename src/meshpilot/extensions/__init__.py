"""Proxy extensions the server delivers: WebAssembly modules for WasmPlugins."""
