'use strict'
// Packed-install probe: the CommonJS entry point (`require('fd-queue')`) passes an fd
// between two processes.
const { main } = require('./pass-fd.cjs')

main(require('fd-queue'), __filename, process.argv.slice(2))
