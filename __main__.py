from mt2kd.cli import main

main()
