;; The content of a JSON string, skipped sixteen bytes at a time (WebAssembly SIMD). It is the
;; inner loop of json-scan.ts for long strings: a chat history is mostly message text and an
;; image is one base64 string, and the JavaScript loop reads four bytes per step at best.
;;
;; The bytes to read are copied into `memory` first (json-strings.ts keeps one window of them).
;; Compiled to json-strings-wasm.ts by `npm run wasm`; a test checks the two agree.
(module
  (memory (export "memory") 1)
  ;; Set to 1 when a call met a backslash escape; the caller clears it.
  (global $escaped (export "escaped") (mut i32) (i32.const 0))

  ;; Reads string content from $p (inside the string) up to $end. Returns the offset of the
  ;; closing quote; -1 when JSON refuses the content (a control byte, a bad escape); or -2 - k
  ;; when the bytes ran out first, k being where to go on (an escape cut short starts again).
  (func (export "skip") (param $p i32) (param $end i32) (result i32)
    (local $v v128) (local $stops v128) (local $c i32) (local $e i32)
    (loop $run
      ;; Sixteen bytes at a time while none is a quote, a backslash or a control byte.
      (block $found
        (loop $vectors
          (br_if $found (i32.gt_u (i32.add (local.get $p) (i32.const 16)) (local.get $end)))
          (local.set $v (v128.load align=1 (local.get $p)))
          (local.set $stops (v128.or
            (v128.or (i8x16.eq (local.get $v) (i8x16.splat (i32.const 0x22)))
                     (i8x16.eq (local.get $v) (i8x16.splat (i32.const 0x5c))))
            (i8x16.lt_u (local.get $v) (i8x16.splat (i32.const 0x20)))))
          (if (v128.any_true (local.get $stops))
            (then
              (local.set $p (i32.add (local.get $p) (i32.ctz (i8x16.bitmask (local.get $stops)))))
              (br $found)))
          (local.set $p (i32.add (local.get $p) (i32.const 16)))
          (br $vectors)))
      ;; Byte by byte to the stop byte: found above, or in the last few bytes.
      (block $stop
        (loop $bytes
          (if (i32.ge_u (local.get $p) (local.get $end))
            (then (return (i32.sub (i32.const -2) (local.get $p)))))
          (local.set $c (i32.load8_u (local.get $p)))
          (br_if $stop (i32.or (i32.or (i32.eq (local.get $c) (i32.const 0x22))
                                       (i32.eq (local.get $c) (i32.const 0x5c)))
                               (i32.lt_u (local.get $c) (i32.const 0x20))))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (br $bytes)))
      (if (i32.eq (local.get $c) (i32.const 0x22)) (then (return (local.get $p))))
      (if (i32.ne (local.get $c) (i32.const 0x5c)) (then (return (i32.const -1))))
      (global.set $escaped (i32.const 1))
      (if (i32.ge_u (i32.add (local.get $p) (i32.const 1)) (local.get $end))
        (then (return (i32.sub (i32.const -2) (local.get $p)))))
      (local.set $e (i32.load8_u offset=1 (local.get $p)))
      ;; \uXXXX: four hex digits.
      (if (i32.eq (local.get $e) (i32.const 0x75))
        (then
          (if (i32.ge_u (i32.add (local.get $p) (i32.const 5)) (local.get $end))
            (then (return (i32.sub (i32.const -2) (local.get $p)))))
          (if (i32.eqz (i32.and
                (i32.and (call $hex (i32.load8_u offset=2 (local.get $p))) (call $hex (i32.load8_u offset=3 (local.get $p))))
                (i32.and (call $hex (i32.load8_u offset=4 (local.get $p))) (call $hex (i32.load8_u offset=5 (local.get $p))))))
            (then (return (i32.const -1))))
          (local.set $p (i32.add (local.get $p) (i32.const 6)))
          (br $run)))
      ;; The two-byte escapes: \" \\ \/ \b \f \n \r \t.
      (if (i32.or
            (i32.or (i32.or (i32.eq (local.get $e) (i32.const 0x22)) (i32.eq (local.get $e) (i32.const 0x5c)))
                    (i32.or (i32.eq (local.get $e) (i32.const 0x2f)) (i32.eq (local.get $e) (i32.const 0x62))))
            (i32.or (i32.or (i32.eq (local.get $e) (i32.const 0x66)) (i32.eq (local.get $e) (i32.const 0x6e)))
                    (i32.or (i32.eq (local.get $e) (i32.const 0x72)) (i32.eq (local.get $e) (i32.const 0x74)))))
        (then
          (local.set $p (i32.add (local.get $p) (i32.const 2)))
          (br $run)))
      (return (i32.const -1)))
    (unreachable))

  (func $hex (param $c i32) (result i32)
    (i32.or (i32.lt_u (i32.sub (local.get $c) (i32.const 0x30)) (i32.const 10))
            (i32.lt_u (i32.sub (i32.or (local.get $c) (i32.const 0x20)) (i32.const 0x61)) (i32.const 6))))
)
