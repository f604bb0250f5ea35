;; Exports whose names a command line must pass verbatim: one that starts
;; with '-', one spelled like a keel option, one with '=' and spaces; and
;; one with a NUL, which only the string-literal form can name.
(module
  (func (export "-x") (result i32) (i32.const 1))
  (func (export "--env") (result i32) (i32.const 2))
  (func (export "a=b c") (param i32) (result i32) (i32.add (local.get 0) (i32.const 3)))
  (func (export "a\00b") (result i32) (i32.const 4)))
