"""Failed messages: the dead-letter service (requeue, discard, reconcile), its
command line (``bfus-lime dlq``) and its web pages (``/admin`` of the receiver)."""
