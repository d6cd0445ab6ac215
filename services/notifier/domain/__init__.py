"""The notifier's pure logic: no I/O, unit-tested without servers."""
