"""The pure core: plain functions over plain data. No database, network or clock in here."""
