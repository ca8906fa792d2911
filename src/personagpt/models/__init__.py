"""Models: loading and saving (`load`), what the hardware does fast (`hardware`, `heap`), the precision to run in
(`precision`), the CPU decoding fast path (`fastpath`), and exports for other engines (`export`)."""
