"""The registered tables, one module per benchmark topic; `registry.TABLES` joins them."""
