fn skipped() { let x = ; }
