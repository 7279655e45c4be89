"""Rank-aware data sharding: the framework-neutral index maths and its torch and tf.data adapters."""
