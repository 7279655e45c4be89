"""The gradient exchange: bucket planning, the Reducer, exchange strategies, the async engine, consistency checks, step statistics and the in-process simulator."""
