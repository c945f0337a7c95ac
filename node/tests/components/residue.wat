;; world: http
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  ;; A bump allocator: enough for one request.
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))
  ;; Answers 200 with what it finds of earlier calls, then leaves traces
  ;; for the next one: the body is the memory's size in pages (4 bytes,
  ;; little-endian) and the 8 bytes at 40000, which a fresh instance has
  ;; as zeros; then it writes "DIRTYDAT" there and at the start of a page
  ;; it grows. An instance whose memory was not reset answers otherwise.
  (func (export "makiatto:http/handler@0.1.0#handle-request") (param i32 i32 f64 f64 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (i32.store (i32.const 32768) (memory.size))
    (i64.store (i32.const 32772) (i64.load (i32.const 40000)))
    (i64.store (i32.const 40000) (i64.const 0x5441445954524944))
    (if (i32.ne (memory.grow (i32.const 1)) (i32.const -1))
      (then (i64.store (i32.const 65600) (i64.const 0x5441445954524944))))
    (i32.store16 (i32.const 64) (i32.const 200))
    (i32.store (i32.const 68) (i32.const 0))
    (i32.store (i32.const 72) (i32.const 0))
    (i32.store8 (i32.const 76) (i32.const 1))
    (i32.store (i32.const 80) (i32.const 32768))
    (i32.store (i32.const 84) (i32.const 12))
    (i32.const 64))
)
