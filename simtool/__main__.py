from simtool.cli import main

main()
