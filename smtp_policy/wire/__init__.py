"""Sans-I/O codecs for the MTA-side protocols and log formats: bytes or lines in, values out."""
