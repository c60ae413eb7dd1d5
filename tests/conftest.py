"""pytest collects absltest cases; absl flags (e.g. --test_tmpdir) need parsing first."""

from absl import flags

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
