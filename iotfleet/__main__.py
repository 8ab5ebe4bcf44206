from iotfleet.cli import main

main()
