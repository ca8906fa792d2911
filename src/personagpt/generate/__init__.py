"""Generation: sampling rules (`sampling`), KV caches (`kvcache`), the token loop (`loop`), multi-turn sessions
(`conversation`), many sessions batched (`engine`), recorded conversations replayed (`replay`), and best-of-N with
its scores (`best_of_n`, `consistency`)."""
