module example.invalid/libattn/bindings/go

go 1.19
