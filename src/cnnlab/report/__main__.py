from cnnlab.report.cli import main

main()
