"""Generated code only: every module here is written by `bnsym derive`. Do not edit by hand."""
