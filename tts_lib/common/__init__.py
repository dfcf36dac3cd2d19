"""Shared by every stage, knowing none of them: atomic file writes and hashes, typed YAML configs, user errors."""
