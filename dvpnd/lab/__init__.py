"""The namespace lab (dvpnctl lab) and its PostgreSQL part."""
